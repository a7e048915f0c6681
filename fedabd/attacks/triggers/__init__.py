"""One module per trigger family; each registers its factories on import (see ``fedabd.attacks``)."""
