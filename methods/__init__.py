"""In-tree method plugins. Importing this package registers every module below.

Adding a method = one new module here (imported below) or in a third-party package that
declares an entry point in the ``lorabench.methods`` group.
"""

from methods import lora, melora, moe_lora, mor, mora, peft_tuners  # noqa: F401  (registration)
