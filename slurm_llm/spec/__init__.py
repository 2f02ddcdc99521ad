"""What to serve, and on what: the model spec and its SLURM options, the shipped presets, the
sizing rule that turns a model's size into GPUs, and the embedded default model.

Both sides read it: the submit side sizes and names jobs from a spec, the node side starts the
engine it names. It imports neither.
"""
