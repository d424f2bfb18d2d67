"""The ShapeWorld vocabulary: shapes, colors, cells and sizes, with the words captions may use for them."""

from __future__ import annotations

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
CELLS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # row-major over a 3x3 grid: cell index = 3 * row + col
SIZES = ("small", "large")
BACKGROUNDS = ("stripes", "checks", "noise", "gradient")
PATTERNS = ("solid", "dots", "stripes")
MAX_OBJECTS = 3

# RGB in [0, 1]; saturated so that they never look like the grey-ish backgrounds.
RGB = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.13, 0.70, 0.22),
    "blue": (0.14, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.58, 0.20, 0.76),
    "orange": (0.98, 0.52, 0.08),
}

# Words a caption may use. The evaluation contract is the JSON spec, never the words, so prompts phrased
# differently from these still evaluate exactly.
SHAPE_WORDS = {
    "circle": (("circle", "circles"), ("disk", "disks"), ("round dot", "round dots")),
    "square": (("square", "squares"), ("box", "boxes"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"),),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs"), ("plus", "pluses")),
}
GENERIC_SHAPE_WORDS = (("shape", "shapes"), ("object", "objects"), ("thing", "things"))
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
CELL_WORDS = {
    "top left": ("in the top left", "in the upper left", "at the top left corner", "in the top-left corner"),
    "top": ("at the top", "at the top center", "in the upper middle"),
    "top right": ("in the top right", "in the upper right", "at the top right corner", "in the top-right corner"),
    "left": ("on the left", "at the left", "in the middle left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "in the middle right"),
    "bottom left": ("in the bottom left", "in the lower left", "at the bottom left corner"),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle"),
    "bottom right": ("in the bottom right", "in the lower right", "at the bottom right corner"),
}
NUMBER_WORDS = {1: ("a", "one"), 2: ("two", "2"), 3: ("three", "3")}

FIELDS = {"shape": SHAPES, "color": COLORS, "position": CELLS, "size": SIZES}
