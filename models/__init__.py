"""The teacher/student pair: built by ``python -m models.build``, served from here.

The ONNX files, the registry and the saved test split are committed, so serving never needs torch.
"""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
REGISTRY_PATH = MODELS_DIR / "registry.json"
TEST_SPLIT_PATH = MODELS_DIR / "digits" / "test.npz"
TEACHER_PATH = MODELS_DIR / "teacher.onnx"
STUDENT_PATH = MODELS_DIR / "student.onnx"
