from cnnviz.app.placeholder import placeholder
from cnnviz.app.router import selection

selection()

placeholder(
    "Saliency",
    "Saliency maps and Grad-CAM show which regions influenced a decision. They can also "
    "mislead, so this page will put sanity checks beside them.",
    "Grad-CAM, Grad-CAM++, Score-CAM, Integrated Gradients, SmoothGrad, occlusion and the sanity checks.",
    4,
)
