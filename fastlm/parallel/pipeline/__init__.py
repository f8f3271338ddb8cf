"""Pipeline parallelism: a GPT split into stages of consecutive blocks, one (or v) per rank,
micro-batches driven through them by a schedule (GPipe, 1F1B, interleaved 1F1B).

    from fastlm.parallel.pipeline import Pipeline
    pipe = Pipeline(model, mesh, schedule="1f1b", micro_batch_size=8, seq_len=128)
    loss = pipe.train_step(micro_batches); pipe.finish_grads(); pipe.clip_grad_norm_(1.0)

schedules.py  what each rank runs, in which order (plain data; simulate() checks and times it)
split.py      which layers each stage holds (balanced by parameters, measured time, or a list)
executor.py   one rank running its schedule: forward/backward, batched isend/irecv
engine.py     Pipeline: the above for one rank of a mesh, plus tied embeddings, clipping, loss, eval
"""
from fastlm.parallel.pipeline.engine import Pipeline, plan_stage_layers
from fastlm.parallel.pipeline.executor import PipelineExecutor
from fastlm.parallel.pipeline.schedules import (
                                                SCHEDULES,
                                                Action,
                                                check_layout,
                                                make_schedule,
                                                simulate,
                                                theoretical_bubble,
)
from fastlm.parallel.pipeline.split import PipelineStage, partition_layers, stage_ranks

__all__ = ["Pipeline", "PipelineStage", "PipelineExecutor", "Action", "SCHEDULES", "make_schedule", "check_layout",
           "simulate", "theoretical_bubble", "partition_layers", "plan_stage_layers", "stage_ranks"]
