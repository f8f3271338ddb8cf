"""fastlm.parallel: the mesh (dp x tp x pp process groups) and data parallelism.

    from fastlm.parallel import init_mesh, DataParallel
    mesh = init_mesh(dp="auto")                 # under torchrun
    model = DataParallel(model, mesh, bucket_mb=25)
"""
from fastlm.parallel.data_parallel import DataParallel
from fastlm.parallel.mesh import CollectiveError, Mesh, MeshError, current_mesh, destroy_mesh, init_mesh
from fastlm.parallel.zero import ShardedOptimizer

__all__ = ["init_mesh", "destroy_mesh", "current_mesh", "Mesh", "MeshError", "CollectiveError", "DataParallel",
           "ShardedOptimizer"]
