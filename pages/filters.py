from cnnviz.app.placeholder import placeholder
from cnnviz.app.router import selection

selection()

placeholder(
    "Filters",
    "First-layer filters can be looked at directly: they are small colour images of edges "
    "and blobs (AlexNet's 11x11 filters are the classic picture). Deeper units are "
    "shown by optimizing an input image until the unit fires as strongly as it can.",
    "first-layer filters as RGB tiles, activation maximization for any unit, and the natural image crops that excite it.",
    8,
)
