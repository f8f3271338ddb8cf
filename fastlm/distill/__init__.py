"""Knowledge distillation: a frozen teacher's distribution as the student's target.

[distill] in a training config (fastlm train / fastlm distill); the loss is
fastlm.ops.linear_distill_loss. config.py: the section; teacher.py: loading and checking the
teacher; training.py: the loss hook for TrainStep; store.py: offline top-k teachers.
"""
