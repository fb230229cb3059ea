"""The second shipped pair: a transformer sequence classifier and its distilled student, two
INT64 inputs (``input_ids``, ``attention_mask``) with dynamic batch and sequence axes, ``logits``
FP32 [batch, 4]. Built by ``distill-models build-text``; its registry entries live in
``models/registry.json`` under ``pairs.text``."""

from models import MODELS_DIR

TEXT_DIR = MODELS_DIR / "text"
TEXT_TEST_SPLIT_PATH = TEXT_DIR / "test.npz"
TEXT_TEACHER_PATH = TEXT_DIR / "teacher.onnx"
TEXT_STUDENT_PATH = TEXT_DIR / "student.onnx"
TEXT_BAD_STUDENT_PATH = TEXT_DIR / "student_bad.onnx"
TEXT_INT8_STUDENT_PATH = TEXT_DIR / "student.int8.onnx"
PAIR = "text"
TEXT_GATEWAY_CONFIG_PATH = TEXT_DIR / "gateway.yaml"
TEACHER_EPOCHS, STUDENT_EPOCHS = 8, 60  # the build's upper bounds (early stopping on validation)
