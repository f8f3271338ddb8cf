"""Knowledge distillation: a frozen teacher's distribution as the student's target.

[distill] in a training config (fastlm train / fastlm distill); the loss is
fastlm.ops.linear_distill_loss (GPT students) or fastlm.ops.logits_distill_loss (encoder students,
masked positions). config.py: the section; teacher.py: loading and checking the teacher;
training.py: the loss hook for TrainStep; masked_lm.py: the encoder students' loss hook;
store.py: offline top-k teachers.
"""
