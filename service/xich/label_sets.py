"""The built-in label sets by name (``--labels cifar10|cifar100|imagenet``), and CIFAR's class names.

In core, not in ``engine/labels.py``, because the trust boundary (``boundary.check_sources``) must tell a built-in
set's name from a file to check, and core imports no engine module. ImageNet's names come from torchvision, loaded
only by the engine (``engine/labels.py``).
"""

from __future__ import annotations

BUILTIN_LABEL_SETS = ("cifar10", "cifar100", "imagenet")

CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# CIFAR-100's fine labels in their label order (alphabetical, as in the dataset's `meta` file)
CIFAR100 = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle
mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider squirrel streetcar
sunflower sweet_pepper table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm
""".split())
