from cnnviz.app.placeholder import placeholder
from cnnviz.app.router import selection

selection()

placeholder(
    "CNN limits",
    "Convolution handles translation, not rotation or scale; pooling forgets where parts "
    "are; mirror images can change the answer. These demos show each failure live.",
    "rotation, scale, shift, mirror, lighting, blur, noise, occlusion and patch-shuffle sweeps, with a lecture mode.",
    7,
)
