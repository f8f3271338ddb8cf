"""fastlm.parallel: the mesh (dp x tp x pp process groups) and data parallelism.

    from fastlm.parallel import init_mesh, DataParallel
    mesh = init_mesh(dp="auto")                 # under torchrun
    model = DataParallel(model, mesh, bucket_mb=25)

    pm = parallelize(model, mesh, config)       # everything a run's config asks for, composed
"""
from fastlm.parallel.apply import apply_activation_checkpointing, apply_compile
from fastlm.parallel.data_parallel import DataParallel
from fastlm.parallel.mesh import CollectiveError, Mesh, MeshError, current_mesh, destroy_mesh, init_mesh
from fastlm.parallel.parallelize import (
    ParallelModel,
    apply_data_parallel,
    apply_tensor_parallel,
    parallelize,
)
from fastlm.parallel.zero import ShardedOptimizer

__all__ = ["init_mesh", "destroy_mesh", "current_mesh", "Mesh", "MeshError", "CollectiveError", "DataParallel",
           "ShardedOptimizer", "parallelize", "ParallelModel", "apply_activation_checkpointing", "apply_compile",
           "apply_tensor_parallel", "apply_data_parallel"]
