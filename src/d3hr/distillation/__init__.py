"""Per-class statistics, group sampling and the staged distillation pipeline."""
