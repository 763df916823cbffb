"""skinlesion: classify dermatoscopic images into the seven HAM10000 diagnoses.

Read top-down:

- :mod:`skinlesion.classes`    the seven diagnoses (codes, names, descriptions, malignancy)
- :mod:`skinlesion.data`       reading HAM10000 / DermaMNIST, splitting, synthetic data, downloads
- :mod:`skinlesion.intake`     opening one image file safely (EXIF, modes, bombs, corrupt files)
- :mod:`skinlesion.preprocess` the ONE definition of image preprocessing and augmentation
- :mod:`skinlesion.models`     timm backbones, weights, saving/loading models (safetensors + JSON)
- :mod:`skinlesion.train`      Lightning training loop
- :mod:`skinlesion.calibration` temperature scaling and expected calibration error
- :mod:`skinlesion.evaluate`   metrics, plots and the evaluation report
- :mod:`skinlesion.predict`    the predictor used by the CLI and the app (PyTorch or ONNX Runtime)
- :mod:`skinlesion.ood`        out-of-distribution score fitted on the training features
- :mod:`skinlesion.explain`    Grad-CAM heat maps
- :mod:`skinlesion.export`     ONNX export with a parity check
- :mod:`skinlesion.app`        the Streamlit web app
- :mod:`skinlesion.cli`        the ``skinlesion`` command

Heavy libraries (torch, timm) are imported lazily, inside the functions that need them.
"""

__version__ = "0.1.0"
