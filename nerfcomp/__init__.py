"""nerfcomp: compress the MLP of a Neural Radiance Field and see what it costs."""
