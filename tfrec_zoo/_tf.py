"""One place that imports TensorFlow and checks that `tf.keras` is Keras 2 (tf_keras)."""
import tensorflow as tf
import tf_keras as keras

if tf.keras.layers.Layer is not keras.layers.Layer:  # pragma: no cover - depends on the process' import order
    raise ImportError(
        "tf.keras is Keras 3, tfrec_zoo needs Keras 2 (tf_keras). Something touched tf.keras before "
        "TF_USE_LEGACY_KERAS=1 was set: export TF_USE_LEGACY_KERAS=1 before starting Python."
    )

__all__ = ["tf", "keras"]
