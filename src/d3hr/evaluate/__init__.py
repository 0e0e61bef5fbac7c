"""Evaluation (DESIGN.md section 4): a cached teacher, students by name, soft- or hard-label training, test top-1."""

from d3hr.evaluate.runner import evaluate
from d3hr.evaluate.students import create_student, list_students, register_student
from d3hr.evaluate.train import soft_label_loss

__all__ = ["create_student", "evaluate", "list_students", "register_student", "soft_label_loss"]
