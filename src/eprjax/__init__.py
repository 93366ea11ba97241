"""eprjax: Exhaustive Photon Restoration on JAX.

The public API; everything else lives in private modules.
"""

import importlib.metadata

from ._errors import EprjaxError as EprjaxError
from ._errors import FileFormatError as FileFormatError
from ._errors import MissingFileError as MissingFileError
from ._errors import ParameterError as ParameterError
from ._fine import fine_psf as fine_psf
from ._fine import resample_psf as resample_psf
from ._image import Image as Image
from ._io import read as read
from ._io import write as write
from ._micromanager import Acquisition as Acquisition
from ._micromanager import find_acquisitions as find_acquisitions
from ._prepdata import PreparedData as PreparedData
from ._prepdata import prepare_data as prepare_data
from ._psf import PreparedPSF as PreparedPSF
from ._psf import otf_support as otf_support
from ._psf import prepare_psf as prepare_psf
from ._psf_model import widefield_psf as widefield_psf
from ._restore import History as History
from ._restore import Solution as Solution
from ._restore import restore as restore
from ._segments import SegmentPlan as SegmentPlan
from ._segments import plan_segments as plan_segments
from ._noise import NoiseModel as NoiseModel
from ._noise import estimate_noise as estimate_noise
from ._noise import noise_weights as noise_weights
from ._tune import Tuning as Tuning
from ._tune import camera_variance as camera_variance
from ._tune import noise_variance_from_rnl as noise_variance_from_rnl
from ._tune import tune_alpha as tune_alpha

try:
    __version__ = importlib.metadata.version("eprjax")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
