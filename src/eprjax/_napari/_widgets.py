"""The napari widgets: Prepare PSF, Restore (with Preview and Auto alpha) and Tune alpha.

Each is a magicgui container docked in the viewer. The work (`_work`) runs on a worker
thread (napari's ``create_worker``), so the viewer stays live; its progress comes back to
the GUI thread through ``ensure_main_thread`` and feeds the progress bar; Cancel sets a flag
that the solver's progress callback reads between chunks of iterations (about every
`_work.CHUNK_SECONDS`), so the work stops within a chunk (the first chunk includes the
compilation, which cannot be interrupted). Errors are shown in the widget's status line,
one line each, as the commands print them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, SpinBox, TextEdit
from napari.layers import Image
from napari.qt.threading import create_worker
from superqt.utils import ensure_main_thread

import eprjax
from eprjax._psf import MODALITIES, NORMS

from . import _work
from ._layers import KEY, history_of, voxel_size_of


def _voxel(layer: Image) -> tuple[float | None, float | None, float | None]:
    return voxel_size_of(layer.scale, layer.metadata)


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise eprjax.ParameterError(f"{name} must be a number, got {text!r}") from None


class _Task(Container):
    """What the three widgets share: the viewer's image layers as choices, a worker thread
    with a progress bar, a status line and Cancel."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(labels=True)
        self._viewer = viewer
        self._stop = threading.Event()
        self.worker: Any = None  # the running worker, if any (tests wait on it)
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress", visible=True)
        self.status = Label(value="", label="")
        self.status.native.setWordWrap(True)
        self.cancel = PushButton(text="Cancel", enabled=False)
        self.cancel.changed.connect(self._cancel)
        self._buttons: list[PushButton] = []
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            event.connect(self._layers_changed)

    def _layers_changed(self, event: Any = None) -> None:
        self.reset_choices()

    def _image_layers(self, widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _layer_choice(self, label: str, tooltip: str) -> ComboBox:
        return ComboBox(choices=self._image_layers, label=label, tooltip=tooltip)

    def _voxel_inputs(self, source: ComboBox) -> tuple[LineEdit, LineEdit]:
        """The XY pixel and Z step fields, filled from the layer chosen in ``source`` (its
        scale, where the file stated the voxel size) now and whenever the choice changes."""
        pixel = LineEdit(value="", label="XY pixel (um)", tooltip="At the object (-size); filled from the layer's scale where it has one.")
        step = LineEdit(value="", label="Z step (um)", tooltip="Between planes (-spaced); filled from the layer's scale where it has one.")

        def fill(*_: Any) -> None:
            if source.value is not None:
                pixel.value, step.value = _voxel_fields(source.value)

        source.changed.connect(fill)
        fill()
        return pixel, step

    def _finish_layout(self, *widgets: Any, buttons: list[PushButton]) -> None:
        self._buttons = buttons
        self.extend([*widgets, Container(widgets=[*buttons, self.cancel], layout="horizontal", labels=False), self.progress, self.status])

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def _run(self, work: Callable[..., Any], done: Callable[[Any], None], what: str) -> None:
        """``work(report=, stop=)`` on a worker thread; ``done(result)`` back on the GUI thread."""
        if self.busy:
            return
        self._stop.clear()
        self.status.value = f"{what}..."
        self.progress.value, self.progress.max = 0, 0  # busy until the first report
        for button in self._buttons:
            button.enabled = False
        self.cancel.enabled = True
        worker = create_worker(work, report=self._report, stop=self._stop.is_set, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._completed)
        worker.returned.connect(done)
        worker.errored.connect(self._failed)
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()

    @ensure_main_thread
    def _report(self, done: int, total: int, text: str) -> None:
        if total > 0:
            self.progress.max = total
            self.progress.value = min(done, total)
        self.status.value = text

    def _completed(self, _result: Any) -> None:
        self.progress.max = max(self.progress.max, 1)
        self.progress.value = self.progress.max

    def _cancel(self, *_: Any) -> None:
        self._stop.set()
        self.status.value = "stopping..."

    def _failed(self, error: BaseException) -> None:
        if isinstance(error, _work.Cancelled):
            self.status.value = f"cancelled ({error})"
        elif isinstance(error, eprjax.EprjaxError):
            self.status.value = f"error: {error}"
        else:
            self.status.value = f"error: {type(error).__name__}: {error}"

    def _finished(self) -> None:
        self.worker = None
        for button in self._buttons:
            button.enabled = True
        self.cancel.enabled = False
        if self.progress.max == 0:
            self.progress.max = 1

    def _checked(self, *pairs: tuple[Any, str]) -> list[Image]:
        layers = []
        for widget, what in pairs:
            if widget.value is None:
                raise eprjax.ParameterError(f"choose {what} (open one, or File > Open Sample > eprjax)")
            layers.append(widget.value)
        return layers

    def _guarded(self, action: Callable[[], None]) -> Callable[..., None]:
        """A button's action: parameter errors go to the status line, not to a traceback."""

        def run(*_: Any) -> None:
            try:
                action()
            except eprjax.EprjaxError as e:
                self.status.value = f"error: {e}"

        return run


class PreparePSFWidget(_Task):
    """Prepare PSF: a bead layer to a PSF layer (preppsf), with its report."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.bead = self._layer_choice("bead image", "Images of sub-resolution beads, as the camera recorded them.")
        self.pixel, self.step = self._voxel_inputs(self.bead)
        self.na = FloatSpinBox(value=1.4, min=0.05, max=1.7, step=0.01, label="NA", tooltip="The (detection) objective's numerical aperture.")
        self.n = FloatSpinBox(value=1.515, min=1.0, max=2.5, step=0.001, label="immersion n", tooltip="The immersion medium's refractive index.")
        self.wavelength = FloatSpinBox(value=0.52, min=0.2, max=2.0, step=0.01, label="emission (um)")
        self.modality = ComboBox(choices=list(MODALITIES), value="widefield", label="modality", tooltip="The OTF support the mask and the report use.")
        self.excitation = FloatSpinBox(value=0.0, min=0.0, max=2.0, step=0.001, label="excitation (um)", tooltip="Confocal, light sheet; 0: the emission's.")
        self.sheet_na = FloatSpinBox(value=0.0, min=0.0, max=1.7, step=0.01, label="sheet NA", tooltip="Light sheet: the illumination NA (needed for its mask); 0: not given.")
        self.mask = FloatSpinBox(value=0.0, min=0.0, max=3.0, step=0.1, label="mask", tooltip="Remove what lies outside the OTF support scaled by this (-mask; 1: as theory says); 0: no mask.")
        self.norm = ComboBox(choices=list(NORMS), value="infocus", label="normalise", tooltip="infocus: the centre plane sums to 1; total: the PSF sums to 1.")
        self.beads = SpinBox(value=1, min=1, max=100, label="beads", tooltip="How many (isolated, brightest) beads to average.")
        self.distill = CheckBox(value=True, text="separate the bead from the noise floor")
        self.report_text = TextEdit(value="", label="report")
        self.report_text.read_only = True
        self.run_button = PushButton(text="Prepare PSF")
        self.run_button.changed.connect(self._guarded(self.start))
        self._finish_layout(
            self.bead, self.pixel, self.step, self.na, self.n, self.wavelength, self.modality, self.excitation, self.sheet_na, self.mask,
            self.norm, self.beads, self.distill, buttons=[self.run_button],
        )
        self.append(self.report_text)

    def start(self) -> None:
        (bead,) = self._checked((self.bead, "the bead image"))
        if not self.pixel.value.strip() or not self.step.value.strip():
            raise eprjax.ParameterError(f"{bead.name!r} states no voxel size: give the XY pixel and the Z step (um)")
        x, z = _float(self.pixel.value, "the XY pixel"), _float(self.step.value, "the Z step")
        data = np.asarray(bead.data)
        if data.ndim != 3:
            raise eprjax.ParameterError(f"{bead.name!r}: a bead image must be one 3-D stack, got shape {data.shape}")
        settings = dict(
            na=self.na.value, n=self.n.value, wavelength_um=self.wavelength.value, norm=self.norm.value, beads=self.beads.value,
            distill=self.distill.value, modality=self.modality.value, excitation_um=self.excitation.value or None,
            sheet_na=self.sheet_na.value or None, mask=self.mask.value or None,
        )
        if settings["na"] >= settings["n"]:
            raise eprjax.ParameterError(f"the NA ({settings['na']}) must be below the immersion's index ({settings['n']})")

        def work(report, stop):
            return eprjax.prepare_psf(data, pixel_size_um=x, z_step_um=z, **settings)

        def done(psf: eprjax.PreparedPSF) -> None:
            _adopt_voxel(bead, z, x)
            lines = psf.report(lightsheet=settings["modality"] == "lightsheet") + [f"warning: {w}" for w in psf.warnings]
            if settings["mask"]:
                lines.append(f"outside the OTF support ({settings['modality']} mask {settings['mask']:g}): {100 * float(psf.masked_fraction):.3g}% of the energy, removed")
            self.report_text.value = "\n".join(lines)
            fz, fy, fx = psf.fwhm_um
            line = (
                f"* napari eprjax Prepare PSF of {bead.name!r}: voxel {z:g} x {x:g} um (z, xy), NA {settings['na']}, n {settings['n']}, "
                f"lambda {settings['wavelength_um']} um, {settings['modality']}"
                + (f" (excitation {settings['excitation_um']} um)" if settings["excitation_um"] else "")
                + (f" (sheet NA {settings['sheet_na']})" if settings["sheet_na"] else "")
                + (f", mask {settings['mask']}" if settings["mask"] else "")
                + f", norm {settings['norm']}, {settings['beads']} bead(s), {'distilled' if settings['distill'] else 'not distilled'}; "
                f"FWHM x {fx:.3f} y {fy:.3f} z {fz:.3f} um, tails {100 * psf.tail_fraction:.1f}%"
            )
            meta = {KEY: {"voxel_size_um": tuple(psf.voxel_size_um), "history": [*history_of(bead.metadata), line], "report": lines}}
            self.layer = self._viewer.add_image(
                np.asarray(psf.value), name=f"{bead.name} PSF", scale=psf.voxel_size_um, colormap="magma", metadata=meta,
            )
            self.status.value = f"PSF {'x'.join(map(str, psf.value.shape))}, FWHM x {fx:.3f} z {fz:.3f} um" + (
                f"; {len(psf.warnings)} warning(s)" if psf.warnings else ""
            )

        self._run(work, done, f"preparing the PSF from {bead.name!r}")


class PrepareDataWidget(_Task):
    """Prepare data: prepdata on an image layer (camera offset, background, bleaching), with
    its voxel size, into a new layer that Restore takes; the RNL and the alpha it suggests."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.image = self._layer_choice("raw image", "The acquisition as the camera recorded it.")
        self.pixel, self.step = self._voxel_inputs(self.image)
        self.offset = LineEdit(value="", label="camera offset", tooltip="Counts to subtract (-offset); empty: none.")
        self.bg_ref = LineEdit(value="10 10 5", label="background box", tooltip="NX NY NZ: subtract the mean of the darkest box of this size (-bg_ref); empty: none.")
        self.norm = ComboBox(choices=["first", "none"], value="first", label="bleaching", tooltip="first: scale each plane to the first one's total (-norm first).")
        self.gain = LineEdit(value="", label="gain (e-/count)", tooltip="With the read noise: the RNL from the camera model; empty: measured on the data.")
        self.read = LineEdit(value="", label="read noise (e-)", tooltip="Electrons RMS.")
        self.run_button = PushButton(text="Prepare data")
        self.run_button.changed.connect(self._guarded(self.start))
        self._finish_layout(self.image, self.pixel, self.step, self.offset, self.bg_ref, self.norm, self.gain, self.read, buttons=[self.run_button])

    def start(self) -> None:
        (image,) = self._checked((self.image, "the raw image"))
        z = _optional(self.step.value, "the Z step")
        x = _optional(self.pixel.value, "the XY pixel")
        box = self.bg_ref.value.split()
        if box and (len(box) != 3 or not all(b.isdigit() and int(b) > 0 for b in box)):
            raise eprjax.ParameterError(f"the background box must be three whole numbers NX NY NZ, got {self.bg_ref.value!r}")
        settings = dict(
            offset=_optional(self.offset.value, "the camera offset"), bg_ref=tuple(int(b) for b in box) if box else None, norm=self.norm.value,
            gain=_optional(self.gain.value, "the gain"), read_noise=_optional(self.read.value, "the read noise"),
        )
        data = image.data

        def work(report, stop):
            return _work.prepare_data(data, **settings)

        def done(prepared: _work.Prepared) -> None:
            _adopt_voxel(image, z, x)
            meta = {KEY: {"voxel_size_um": _voxel(image), "history": [*history_of(image.metadata), *prepared.lines], "rnl": prepared.rnl}}
            self.layer = self._viewer.add_image(prepared.value, name=f"{image.name} prepared", scale=image.scale, translate=image.translate, metadata=meta)
            self.status.value = prepared.summary

        self._run(work, done, f"preparing {image.name!r}")


def _adopt_voxel(layer: Image, z: float | None, x: float | None) -> None:
    """The voxel size typed for ``layer`` becomes its scale, so that it lines up in the viewer
    with the layers made from it (its pixels are not touched)."""
    scale = np.array(layer.scale, float)
    if z is not None:
        scale[-3] = z
    if x is not None:
        scale[-2:] = x
    if not np.allclose(scale, layer.scale):
        layer.scale = scale


def _optional(text: str, name: str) -> float | None:
    return None if not text.strip() else _float(text, name)


def _voxel_fields(layer: Image) -> tuple[str, str]:
    """(XY pixel, Z step) as text for a layer, empty where unknown."""
    z, _, x = _voxel(layer)
    return ("" if x is None else f"{x:.6g}", "" if z is None else f"{z:.6g}")


class _RestoreSettings(_Task):
    """The settings Restore and Tune alpha share."""

    def __init__(self, viewer: Any) -> None:
        super().__init__(viewer)
        self.image = self._layer_choice("image", "The prepared image (background removed: prepdata).")
        self.psf = self._layer_choice("PSF", "The prepared PSF (Prepare PSF); brought to the image's voxel size if its own differs.")
        self.iterations = SpinBox(value=300, min=1, max=100000, label="iterations", tooltip="The most iterations (-it).")
        self.tol = LineEdit(value="1e-3", label="convergence", tooltip="Stop when the relative gradient is below this (-co).")
        self.padding = ComboBox(choices=list(_work.PADDINGS), value="auto", label="padding", tooltip="auto: model the light from outside the field; none: the periodic model.")
        self.preview_size = SpinBox(value=_work.PREVIEW_XY, min=8, max=8192, label="preview (XY voxels)", tooltip="Side of the sub-volume that Preview and Auto use, about the view's centre.")

    def _inputs(self) -> tuple[Image, Image, Any, np.ndarray, list[str]]:
        image, psf = self._checked((self.image, "the image"), (self.psf, "the PSF"))
        if image is psf:
            raise eprjax.ParameterError("the image and the PSF are the same layer")
        h, notes = _work.psf_like_data(psf.data, _voxel(psf), image.data, _voxel(image))
        return image, psf, image.data, h, notes

    def _region(self, image: Image) -> tuple[slice, slice, slice]:
        """The preview's sub-volume about the view's centre (in the image's voxels)."""
        point = list(self._viewer.dims.point)  # the planes shown, and Y, X from the camera
        point[-2:] = self._viewer.camera.center[-2:]
        return _work.preview_box(image.data.shape, image.world_to_data(point), self.preview_size.value)

    def _volume(self, image: Image) -> Any:
        """The image's current volume (a 4-D layer's at the viewer's time step)."""
        if image.ndim == 3:
            return image.data
        if image.ndim == 4:
            return image.data[int(np.clip(round(self._viewer.dims.point[0]), 0, image.data.shape[0] - 1))]
        raise eprjax.ParameterError(f"{image.name!r}: the image must be 3-D or 4-D, got shape {image.data.shape}")


class RestoreWidget(_RestoreSettings):
    """Restore: EPR with alpha typed, or chosen by Auto on the preview region; Preview
    restores that region only, to try alphas in seconds."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        self.alpha = LineEdit(value="5e-4", label="alpha", tooltip="The smoothness (-sm): the noise-to-signal power ratio.")
        self.device = ComboBox(choices=_work.device_names(), label="device")
        self.auto_button = PushButton(text="Auto alpha", tooltip="Choose alpha on the preview region: by the discrepancy principle (noise measured there), else by GCV.")
        self.preview_button = PushButton(text="Preview")
        self.run_button = PushButton(text="Restore")
        self.auto_button.changed.connect(self._guarded(self.auto))
        self.preview_button.changed.connect(self._guarded(self.preview))
        self.run_button.changed.connect(self._guarded(self.start))
        self._finish_layout(
            self.image, self.psf, self.alpha, self.iterations, self.tol, self.padding, self.device, self.preview_size,
            buttons=[self.auto_button, self.preview_button, self.run_button],
        )
        self.image.changed.connect(self._alpha_from_rnl)
        self._alpha_from_rnl()
        self.result: _work.Restored | None = None  # the last restoration (or preview)
        self.tuning: eprjax.Tuning | None = None  # the last Auto

    def _alpha_from_rnl(self, *_: Any) -> None:
        """alpha = RNL^2 where the image came through Prepare data (prepdata's suggestion)."""
        rnl = ((self.image.value.metadata.get(KEY) or {}).get("rnl") if self.image.value is not None else None) or float("nan")
        if np.isfinite(rnl) and rnl > 0:
            self.alpha.value = f"{rnl * rnl:.4g}"

    def _settings(self) -> dict[str, Any]:
        return dict(
            alpha=_float(self.alpha.value, "alpha"), max_iterations=self.iterations.value, tol=_float(self.tol.value, "convergence"),
            padding=self.padding.value, device=self.device.value,
        )

    def start(self, *, region: bool = False) -> None:
        image, psf, data, h, notes = self._inputs()
        settings = self._settings()
        box = self._region(image) if region else None
        source = self._volume(image) if region else data

        def work(report, stop):
            return _work.restore(source, h, report=report, stop=stop, notes=notes, region=box, **settings)

        def done(result: _work.Restored) -> None:
            self.result = result
            meta = {
                KEY: {
                    "voxel_size_um": _voxel(image), "history": [*history_of(image.metadata), result.history_line(image.name, psf.name)],
                    "alpha": result.alpha, "iterations": result.iterations, "converged": result.converged, "notes": list(result.notes),
                    **result.settings,
                }
            }
            translate = np.array(image.translate, float)
            if box is not None:
                translate[-3:] += np.array([s.start for s in box]) * np.asarray(image.scale)[-3:]
                translate = translate[-3:]
            name = f"{image.name} {'preview' if box is not None else 'restored'}"
            if box is not None and name in self._viewer.layers:
                layer = self._viewer.layers[name]
                layer.data, layer.translate, layer.metadata = result.value, translate, meta
                layer.reset_contrast_limits()
            else:
                layer = self._viewer.add_image(result.value, name=name, scale=np.asarray(image.scale)[-result.value.ndim:], translate=translate[-result.value.ndim:], metadata=meta)
            self.layer = layer
            self.status.value = (
                f"{'preview' if box is not None else 'restored'}: {result.iterations} iterations, "
                f"{'converged' if result.converged else 'not converged'}, {result.seconds:.1f} s"
            )

        self._run(work, done, "restoring the preview region" if region else f"restoring {image.name!r}")

    def preview(self) -> None:
        self.start(region=True)

    def auto(self) -> None:
        image, psf, data, h, notes = self._inputs()
        settings = self._settings()
        box = self._region(image)
        volume = self._volume(image)

        def work(report, stop):
            return _work.auto_alpha(volume, h, region=box, max_iterations=settings["max_iterations"], tol=settings["tol"], padding=settings["padding"], report=report, stop=stop)

        def done(found: tuple[eprjax.Tuning, str]) -> None:
            self.tuning, said = found
            self.alpha.value = f"{self.tuning.alpha:.4g}"
            self.status.value = said

        self._run(work, done, "choosing alpha on the preview region")


class TuneWidget(_RestoreSettings):
    """Tune alpha: the criterion against alpha on the preview region (or the whole volume),
    drawn, with the choice marked."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__(napari_viewer)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg  # noqa: PLC0415  (Qt: only here)
        from matplotlib.figure import Figure  # noqa: PLC0415

        self.criterion = ComboBox(choices=list(_work.CRITERIA), value="discrepancy", label="criterion")
        self.where = ComboBox(choices=["preview region", "whole volume"], value="preview region", label="on")
        self.run_button = PushButton(text="Tune")
        self.run_button.changed.connect(self._guarded(self.start))
        self._finish_layout(self.image, self.psf, self.criterion, self.where, self.iterations, self.tol, self.padding, self.preview_size, buttons=[self.run_button])
        self.figure = Figure(figsize=(4, 3), dpi=90)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(240)
        self.native.layout().addWidget(self.canvas)
        self.tuning: eprjax.Tuning | None = None

    def start(self) -> None:
        image, psf, data, h, notes = self._inputs()
        volume = self._volume(image)
        box = self._region(image) if self.where.value == "preview region" else None
        settings = dict(criterion=self.criterion.value, max_iterations=self.iterations.value, tol=_float(self.tol.value, "convergence"), padding=self.padding.value)

        def work(report, stop):
            return _work.tune(volume, h, region=box, report=report, stop=stop, **settings)

        def done(tuning: eprjax.Tuning) -> None:
            self.tuning = tuning
            _work.tuning_figure(tuning, self.figure)
            self.canvas.draw()
            self.status.value = tuning.describe()

        self._run(work, done, f"tuning alpha ({settings['criterion']})")
