"""The napari plugin: its manifest, reader, writer and sample data through napari itself, and
its widgets driven as a user would (choose layers, press buttons), their results checked
against the library's functions on the same arrays. Skipped where napari (``.[test-napari]``)
or a display (an X server, or Xvfb to start one) is missing. ``EPRJAX_SCREENSHOTS=DIR``
writes the widgets' screenshots there (docs/images for the napari page)."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():  # napari's own imports warn of their dependencies' deprecations
    warnings.simplefilter("ignore", DeprecationWarning)
    napari = pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from eprjax._napari import _layers, _widgets, _work
    from qtpy.QtCore import QTimer

import eprjax  # noqa: E402

SCREENSHOTS = os.environ.get("EPRJAX_SCREENSHOTS")
WORK_SECONDS = 300  # the most any widget's work may take here (a 2-core CPU, compiling)


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # napari's, vispy's


@pytest.fixture
def viewer(display, qtbot):
    """A napari viewer, not shown, closed after the test (what napari's make_napari_viewer
    does, whose pytest plugin this project disables: pyproject.toml says why); any widget's
    work still running (a failed test) is cancelled and waited for first."""
    v = napari.Viewer(show=False)
    yield v
    while _DOCKED:
        widget = _DOCKED.pop()
        if widget.busy:
            widget._cancel()
            _wait(qtbot, widget)
    v.close()


_DOCKED: list = []  # the widgets the running test docked


def _dock(viewer, kind, name: str | None = None):
    widget = kind(viewer)
    viewer.window.add_dock_widget(widget, name=name or kind.__name__)
    _DOCKED.append(widget)
    return widget


def _press(button) -> None:
    button.changed.emit(True)


def _wait(qtbot, widget, timeout: float = WORK_SECONDS) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=int(timeout * 1000))


def _screenshot(viewer, name: str, tmp_path: Path) -> np.ndarray:
    """The whole window (widgets included) as napari grabs it; written to
    EPRJAX_SCREENSHOTS/name when set."""
    folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    viewer.window.resize(1500, 950)
    viewer.reset_view()
    return viewer.screenshot(str(folder / name), canvas_only=False, flash=False)


def _samples(viewer) -> tuple:
    viewer.open_sample("eprjax", "bead")
    viewer.open_sample("eprjax", "specimen")
    return viewer.layers["demo bead"], viewer.layers["demo specimen"]


def test_manifest_is_valid_and_its_python_names_import():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from npe2 import PluginManifest  # noqa: PLC0415

    manifest = PluginManifest.from_distribution("eprjax")
    manifest.validate_imports()
    assert {c.id for c in manifest.contributions.commands} >= {"eprjax.get_reader", "eprjax.write_image", "eprjax.restore"}


def test_reader_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.png").write_bytes(b"")
    (tmp_path / "flat.zarr").write_bytes(b"")
    assert _layers.get_reader(str(tmp_path / "notes.png")) is None
    assert _layers.get_reader(str(tmp_path / "flat.zarr")) is None  # a .zarr that is not a folder
    assert _layers.get_reader(str(tmp_path / "cell.i2i")) is _layers.read_layers


@pytest.mark.parametrize("suffix", [".i2i", ".tif", ".ome.zarr"])
def test_open_and_save_keep_the_voxel_size_and_history(viewer, tmp_path, suffix):
    rng = np.random.default_rng(0)
    data = rng.random((5, 12, 16), np.float32)
    source = eprjax.write(tmp_path / f"cell{suffix}", data, voxel_size_um=(0.3, 0.104, 0.104), history=["* a test wrote this"])
    (layer,) = viewer.open(str(source), plugin="eprjax")
    assert layer.name == source.name
    np.testing.assert_array_equal(np.asarray(layer.data), data)
    np.testing.assert_allclose(layer.scale, (0.3, 0.104, 0.104), rtol=1e-6)
    assert _layers.history_of(layer.metadata)[-1] == "* a test wrote this"
    layer.scale = (0.35, 0.104, 0.104)  # a user corrects the Z step in napari
    out = tmp_path / f"saved{suffix}"
    written = napari.save_layers(str(out), [layer], plugin="eprjax")
    assert [Path(p) for p in written] == [out]
    back = eprjax.read(out)
    np.testing.assert_array_equal(np.asarray(back.data), data)
    np.testing.assert_allclose(back.voxel_size_um, (0.35, 0.104, 0.104), rtol=1e-5)
    assert "* a test wrote this" in back.history


def test_a_file_without_voxel_size_stays_without(viewer, tmp_path):
    source = eprjax.write(tmp_path / "plain.i2i", np.ones((3, 8, 8), np.float32))
    (layer,) = viewer.open(str(source), plugin="eprjax")
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)
    napari.save_layers(str(tmp_path / "again.i2i"), [layer], plugin="eprjax")
    assert eprjax.read(tmp_path / "again.i2i").voxel_size_um == (None, None, None)


def test_prepare_psf_then_restore_through_the_widgets(viewer, qtbot, tmp_path):
    """The demo's bead and specimen, Prepare PSF and Restore pressed as a user would; the new
    layers are what the library gives on the same arrays."""
    bead, specimen = _samples(viewer)
    prepare = _dock(viewer, _widgets.PreparePSFWidget, "Prepare PSF")
    prepare.bead.value = bead
    _press(prepare.run_button)
    _wait(qtbot, prepare)
    psf_layer = viewer.layers["demo bead PSF"]
    expected = eprjax.prepare_psf(np.asarray(bead.data), na=1.4, n=1.515, pixel_size_um=0.187, z_step_um=0.25)
    np.testing.assert_allclose(psf_layer.data, np.asarray(expected.value), rtol=0, atol=1e-6 * float(np.max(expected.value)))
    np.testing.assert_allclose(psf_layer.scale, expected.voxel_size_um)
    assert "FWHM" in prepare.report_text.value and "background" in prepare.report_text.value
    assert _layers.history_of(psf_layer.metadata)[-1].startswith("* napari eprjax Prepare PSF")
    specimen.visible = bead.visible = False
    psf_layer.gamma = 0.3  # the PSF's faint rings and tails too
    viewer.dims.ndisplay = 3  # the PSF's maximum along Z: its rings and tails, drawn by OpenGL under Xvfb
    _screenshot(viewer, "napari-prepare-psf.png", tmp_path)
    viewer.dims.ndisplay, specimen.visible, bead.visible = 2, True, True

    restore = _dock(viewer, _widgets.RestoreWidget, "Restore")
    restore.image.value, restore.psf.value = specimen, psf_layer
    restore.alpha.value, restore.iterations.value = "5e-4", 40
    _press(restore.run_button)
    assert restore.busy  # off the GUI thread: the button returned at once
    _wait(qtbot, restore)
    assert restore.status.value.startswith("restored"), restore.status.value
    out = viewer.layers["demo specimen restored"]
    want = eprjax.restore(np.asarray(specimen.data, np.float32), np.asarray(psf_layer.data), alpha=5e-4, max_iterations=40)
    assert out.data.shape == specimen.data.shape
    np.testing.assert_allclose(out.scale, specimen.scale)
    # the widget's run goes in chunks (progress callback); the iteration is the same
    np.testing.assert_allclose(out.data, np.asarray(want.value), rtol=0, atol=1e-5 * float(np.max(want.value)))
    meta = out.metadata[_layers.KEY]
    assert meta["alpha"] == pytest.approx(5e-4) and meta["iterations"] == int(want.iterations)
    assert meta["history"][-1].startswith("* napari eprjax Restore") and meta["history"][0] == "demo: a simulated specimen"
    assert restore.progress.value == restore.progress.max == 40
    for layer in (bead, psf_layer):
        layer.visible = False
    viewer.grid.enabled = True  # the data and the restoration side by side
    viewer.dims.set_point(0, 12 * 0.25)
    shot = _screenshot(viewer, "napari-restore.png", tmp_path)
    assert shot.ndim == 3 and shot[..., :3].std() > 5  # drawn, not blank


def test_prepare_data_gives_what_prepdata_gives_and_restore_takes_its_alpha(viewer, qtbot):
    from eprjax.cli._inputs import rnl_from_history  # noqa: PLC0415  (what epr -sm rnl reads)

    viewer.open_sample("eprjax", "raw specimen")
    raw = viewer.layers["demo specimen (raw)"]
    prepare = _dock(viewer, _widgets.PrepareDataWidget, "Prepare data")
    assert (prepare.pixel.value, prepare.step.value) == ("0.187", "0.25")  # from the layer's scale
    prepare.bg_ref.value, prepare.norm.value = "5 5 3", "first"
    _press(prepare.run_button)
    _wait(qtbot, prepare)
    out = viewer.layers["demo specimen (raw) prepared"]
    want = eprjax.prepare_data(np.asarray(raw.data, np.float32), bg_ref=(5, 5, 3), norm="first")
    np.testing.assert_array_equal(out.data, np.asarray(want.value))
    np.testing.assert_allclose(out.scale, (0.25, 0.187, 0.187))
    history = _layers.history_of(out.metadata)
    assert rnl_from_history(eprjax.Image(out.data, history=history)) == pytest.approx(float(want.rnl), rel=1e-5)
    assert "suggested alpha" in prepare.status.value
    restore = _dock(viewer, _widgets.RestoreWidget, "Restore")
    restore.image.value = out
    assert float(restore.alpha.value) == pytest.approx(float(want.rnl) ** 2, rel=1e-3)
    prepare.bg_ref.value = "5 5"
    _press(prepare.run_button)
    assert prepare.status.value == "error: the background box must be three whole numbers NX NY NZ, got '5 5'"


def test_cancel_stops_a_long_restoration(viewer, qtbot):
    _, specimen = _samples(viewer)
    psf = np.asarray(eprjax.widefield_psf((15, 31, 31), na=1.4, n=1.515, wavelength_um=0.52, pixel_size_um=0.187, z_step_um=0.25))
    viewer.add_image(psf, name="model PSF", scale=specimen.scale)
    restore = _dock(viewer, _widgets.RestoreWidget, "Restore")
    restore.image.value, restore.psf.value = specimen, viewer.layers["model PSF"]
    restore.alpha.value, restore.iterations.value, restore.tol.value = "1e-7", 100000, "1e-9"
    ticks = []  # the GUI thread's timer, every 20 ms while the work runs: how live the viewer stays
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    _press(restore.run_button)
    qtbot.waitUntil(lambda: restore.progress.value >= 5, timeout=WORK_SECONDS * 1000)  # compiled, iterating
    timer.stop()
    gaps = np.diff(ticks)
    assert len(gaps) > 10 and gaps.max() < 0.5, (len(gaps), gaps.max())  # through compilation and iterations
    pressed = time.perf_counter()
    _press(restore.cancel)
    _wait(qtbot, restore, timeout=10)
    took = time.perf_counter() - pressed
    assert took < 2.0, took
    assert restore.status.value.startswith("cancelled"), restore.status.value
    assert "demo specimen restored" not in viewer.layers
    assert restore.run_button.enabled and not restore.cancel.enabled


def test_preview_auto_alpha_and_tuning(viewer, qtbot, tmp_path):
    bead, specimen = _samples(viewer)
    psf = eprjax.prepare_psf(np.asarray(bead.data), na=1.4, n=1.515, pixel_size_um=0.187, z_step_um=0.25)
    viewer.add_image(np.asarray(psf.value), name="PSF", scale=psf.voxel_size_um)
    restore = _dock(viewer, _widgets.RestoreWidget, "Restore")
    restore.image.value, restore.psf.value = specimen, viewer.layers["PSF"]
    restore.preview_size.value, restore.iterations.value = 32, 60
    viewer.camera.center = (3.0, 0.187 * 20, 0.187 * 44)  # the view centred at y 20, x 44 voxels

    _press(restore.auto_button)
    _wait(qtbot, restore)
    assert restore.tuning is not None, restore.status.value
    box = _work.preview_box(specimen.data.shape, (12, 20, 44), 32)
    assert (box[1].start, box[2].start) == (4, 28)
    want = eprjax.tune_alpha(np.asarray(specimen.data, np.float32)[box], np.asarray(psf.value), max_iterations=60)
    assert restore.tuning.alpha == pytest.approx(want.alpha, rel=1e-4)
    assert float(restore.alpha.value) == pytest.approx(want.alpha, rel=1e-3)

    _press(restore.preview_button)
    _wait(qtbot, restore)
    preview = viewer.layers["demo specimen preview"]
    assert preview.data.shape == (24, 32, 32)
    np.testing.assert_allclose(preview.translate, np.array([0, 4, 28]) * specimen.scale, atol=1e-9)
    direct = eprjax.restore(np.asarray(specimen.data, np.float32)[box], np.asarray(psf.value), alpha=float(restore.alpha.value), max_iterations=60)
    np.testing.assert_allclose(preview.data, np.asarray(direct.value), rtol=0, atol=1e-5 * float(np.max(direct.value)))

    tune = _dock(viewer, _widgets.TuneWidget, "Tune alpha")
    tune.image.value, tune.psf.value = specimen, viewer.layers["PSF"]
    tune.preview_size.value, tune.iterations.value = 32, 60
    _press(tune.run_button)
    _wait(qtbot, tune)
    assert tune.tuning is not None and tune.tuning.alpha == pytest.approx(want.alpha, rel=1e-4)
    (ax,) = tune.figure.axes
    assert len(ax.lines[0].get_xdata()) == tune.tuning.evaluations
    bead.visible = viewer.layers["PSF"].visible = False
    preview.colormap, preview.blending = "magma", "additive"  # the preview over the data
    viewer.dims.set_point(0, 12 * 0.25)
    _screenshot(viewer, "napari-tune.png", tmp_path)


def test_mismatched_psf_sampling_is_resampled_and_errors_are_one_line(viewer, qtbot):
    _, specimen = _samples(viewer)
    restore = _dock(viewer, _widgets.RestoreWidget, "Restore")
    restore.image.value, restore.psf.value = specimen, specimen  # the only layer: both choices fall on it
    _press(restore.run_button)
    assert restore.status.value == "error: the image and the PSF are the same layer" and not restore.busy
    fine = np.asarray(eprjax.widefield_psf((41, 31, 31), na=1.4, n=1.515, wavelength_um=0.52, pixel_size_um=0.187, z_step_um=0.1))
    viewer.add_image(fine, name="PSF at 0.1 um", scale=(0.1, 0.187, 0.187))
    restore.psf.value = viewer.layers["PSF at 0.1 um"]
    restore.alpha.value = "not a number"
    _press(restore.run_button)
    assert restore.status.value == "error: alpha must be a number, got 'not a number'"
    restore.alpha.value, restore.iterations.value = "1e-3", 5
    _press(restore.run_button)
    _wait(qtbot, restore)
    notes = viewer.layers["demo specimen restored"].metadata[_layers.KEY]["notes"]
    assert any("band-limited resampling" in n for n in notes), notes
