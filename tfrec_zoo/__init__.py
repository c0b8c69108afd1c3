"""tfrec_zoo: industrial recommender models on TensorFlow 2.20 + tf_keras (Keras 2).

TFRS and every model here need Keras 2. TensorFlow decides which Keras `tf.keras` is the first time it is touched,
so `TF_USE_LEGACY_KERAS=1` is set here when nothing has decided yet, and a process that already bound Keras 3 fails fast.
"""
import os
import sys

__version__ = "0.1.0"


def _require_legacy_keras() -> None:
    value = os.environ.get("TF_USE_LEGACY_KERAS")
    if value is None:
        if "tensorflow" in sys.modules and "tf_keras" not in sys.modules and "keras" in sys.modules:
            raise ImportError(
                "tfrec_zoo needs Keras 2 (tf_keras) but this process already imported TensorFlow with Keras 3. "
                "Set TF_USE_LEGACY_KERAS=1 in the environment before Python starts (or before importing tensorflow)."
            )
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    elif value.strip().lower() not in ("1", "true", "yes"):
        raise ImportError(
            f"TF_USE_LEGACY_KERAS={value!r}: tfrec_zoo needs Keras 2 (tf_keras), which TensorFlow only uses when "
            "TF_USE_LEGACY_KERAS=1. Export TF_USE_LEGACY_KERAS=1 before starting Python."
        )


_require_legacy_keras()
