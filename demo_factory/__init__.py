"""The factory of the embedded demo model: the dataset generator (:mod:`.data`) and the training (:mod:`.train`).

It imports the product (`compress`) and is never imported by it: the product loads the model this factory
writes (`compress/assets/demo`) like any other artifact.
"""
