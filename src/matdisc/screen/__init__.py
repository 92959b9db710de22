"""CGCNN property prediction (training, prediction API) and screening of candidates.

``predict(structures, properties, model_dir=...)`` is the API the filter uses; the
stages are in :mod:`matdisc.screen.stage`.
"""

from matdisc.screen.predict import PropertyPredictor, predict

__all__ = ["PropertyPredictor", "predict"]
