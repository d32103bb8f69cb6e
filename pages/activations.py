from cnnviz.app.placeholder import placeholder
from cnnviz.app.router import selection

selection()

placeholder(
    "Activations",
    "Each filter of a convolution layer produces one activation map: bright where the "
    "input matches the filter. Walking from the first layer to the last, maps get smaller "
    "and more numerous, and their meaning moves from edges and colours to parts and objects.",
    "every layer's channels as a clickable mosaic, the enlarged map over the image, and a depth summary.",
    3,
)
