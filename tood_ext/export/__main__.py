"""``python -m tood_ext.export --checkpoint ... --format onnx|pt2 --out ...``."""
from .cli import main

main()
