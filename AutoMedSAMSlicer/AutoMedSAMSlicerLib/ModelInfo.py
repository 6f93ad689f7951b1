"""The text under the model selector: the chosen model's title, licence and classes, or why it cannot be used.

The model itself (a registry id, or a model file that replaces it) is chosen and read by
`automedsam.slicer.model_choice`, without Qt; this only words it for the label."""

from slicer.i18n import tr as _


def describeModel(summary, catalog) -> str:
    """Title, licence and classes of a `ModelSummary` (or its problem), one item per line."""
    if summary.problem:
        return summary.problem
    if summary.classes is None:
        classes = _("read once the Python packages are installed (press Apply)")
    elif not summary.classes:
        classes = _("none: this model runs box prompts only")
    else:
        classes = ", ".join(catalog.get(key).name if key in catalog else key for key in summary.classes)
    lines = [summary.title, _("Licence: {license}").format(license=summary.license) if summary.license else "",
             _("Classes ({count}): {classes}").format(count=len(summary.classes or ()), classes=classes)]
    return "\n".join(line for line in lines if line)


class ModelInfo:
    """The model description label; remembers what it shows, so the class tree is rebuilt only when that changes."""

    def __init__(self, label, catalog) -> None:
        self.label = label
        self.catalog = catalog
        self.shown = None

    def show(self, summary) -> bool:
        """Show `summary` unless it is shown already (same model, same file version); True when it changed."""
        if summary == self.shown:
            return False
        self.shown = summary
        self.label.text = describeModel(summary, self.catalog)
        return True
