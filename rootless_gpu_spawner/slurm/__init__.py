"""Students' servers on a Slurm GPU cluster: :class:`.spawner.RootlessGPUSlurmSpawner`
(entry point ``rootless-gpu-slurm``), the node side ``rootless-gpu-run`` (:mod:`.runner`) and
the hub's report route (:mod:`.report`). Slurm places the job and counts the GPUs; the
container is the local spawner's, built by the same functions.
"""
