"""The class tree of the AutoMedSAM module: Qt items only. What it shows (regions, filters, which classes the model
has, tick states) is decided by `automedsam.slicer.class_picker`, which is tested without Qt."""

import qt
from slicer.i18n import tr as _

from automedsam.slicer.class_picker import region_state


class ClassTree:
    """A `QTreeWidget` holding body regions with their classes as check boxes; rows carry catalog keys (classes) or
    region names (regions) in `Qt.UserRole`."""

    def __init__(self, treeWidget) -> None:
        self.tree = treeWidget
        self.groups = []
        self.filling = False

    def fill(self, groups: list) -> None:
        """Rebuild the rows from `class_picker.group_classes` groups; classes the model lacks are shown disabled."""
        self.groups = groups
        self.filling = True
        self.tree.clear()
        for group in groups:
            regionItem = qt.QTreeWidgetItem(self.tree, [group.title, ""])
            regionItem.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsSelectable)
            regionItem.setData(0, qt.Qt.UserRole, group.region)
            for choice in group.choices:
                item = qt.QTreeWidgetItem(regionItem, [choice.name, " / ".join(choice.modalities)])
                flags = qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsSelectable
                item.setFlags(flags | qt.Qt.ItemIsEnabled if choice.available else flags)
                item.setData(0, qt.Qt.UserRole, choice.key)
                if not choice.available:
                    item.setToolTip(0, _("The selected model was not trained for this class."))
        self.tree.expandAll()
        self.filling = False

    def showTicked(self, selected: list) -> None:
        """Set the check boxes from the selected catalog keys (regions: checked, partly checked or unchecked)."""
        states = {"checked": qt.Qt.Checked, "partial": qt.Qt.PartiallyChecked, "unchecked": qt.Qt.Unchecked}
        self.filling = True
        for index, group in enumerate(self.groups):
            regionItem = self.tree.topLevelItem(index)
            regionItem.setCheckState(0, states[region_state(selected, group)])
            for row in range(regionItem.childCount()):
                item = regionItem.child(row)
                ticked = item.data(0, qt.Qt.UserRole) in selected
                item.setCheckState(0, qt.Qt.Checked if ticked else qt.Qt.Unchecked)
        self.filling = False

    def changedRow(self, item):
        """(key, ticked, group) of a row the user ticked or unticked; `group` is None for a class row."""
        key = item.data(0, qt.Qt.UserRole)
        group = next((g for g in self.groups if g.region == key and item.parent() is None), None)
        return key, item.checkState(0) != qt.Qt.Unchecked, group

    def currentGroup(self):
        """The body region group of the selected row (a region or one of its classes), or None."""
        item = self.tree.currentItem()
        if item is None or not self.groups:
            return None
        regionItem = item.parent() or item
        return self.groups[self.tree.indexOfTopLevelItem(regionItem)]
