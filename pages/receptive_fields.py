from cnnviz.app.placeholder import placeholder
from cnnviz.app.router import selection

selection()

placeholder(
    "Receptive fields",
    "A unit sees only part of the input, and that part grows with depth: two stacked 3x3 "
    "convolutions see 5x5, and every stride-2 step doubles the growth. The effective field, "
    "where the gradient really flows, is much smaller and roughly Gaussian.",
    "click a unit to see its theoretical and effective field on the image, layer by layer.",
    5,
)
