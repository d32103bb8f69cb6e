from cnnviz.app.placeholder import placeholder
from cnnviz.app.router import selection

selection()

placeholder(
    "Adversarial",
    "A carefully chosen, imperceptible perturbation can change the answer (the panda that "
    "becomes a gibbon), while random noise of the same size usually changes nothing. "
    "That gap is the point of this demo.",
    "FGSM and PGD attacks, targeted or not, beside a random-noise control and a budget sweep.",
    6,
)
