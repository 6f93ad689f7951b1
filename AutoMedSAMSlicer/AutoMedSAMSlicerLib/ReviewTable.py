"""The module's review helpers: the "slices to review first" table (Qt items only) and opening the Segment Editor.

The ranking itself (`automedsam.review`) is computed by the logic and tested without Qt; a click on a row moves the
slice views to that segment on that slice and tells `onJump(classKey, rasPoint)` (the module then picks that class
for refinement and prepares the slice, so that the first correcting click there is fast)."""

import qt
import slicer
from slicer.i18n import tr as _

MAX_ROWS = 500  # the most uncertain slices; a whole-body run can have thousands of segment slices


class ReviewTable:
    """A `QTableWidget` of (segment, slice, score) rows, most suspect first; each row keeps its RAS point."""

    def __init__(self, tableWidget, onJump=None) -> None:
        self.table, self.onJump = tableWidget, onJump
        self.table.setColumnCount(3)
        self.table.setHorizontalHeaderLabels([_("Segment"), _("Slice"), _("Score")])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.connect("cellClicked(int,int)", self.jumpToRow)
        self.points, self.keys = [], []

    def show(self, scores: list) -> None:
        """Fill the rows from `automedsam.review.slice_scores` (already sorted); an empty list clears the table."""
        shown = scores[:MAX_ROWS]
        self.points, self.keys = [score.center_ras for score in shown], [score.key for score in shown]
        self.table.setRowCount(len(shown))
        for row, score in enumerate(shown):
            cells = (score.name, f"{score.axis} {score.index}", f"{score.score:.3f}")
            for column, text in enumerate(cells):
                item = qt.QTableWidgetItem(text)
                item.setToolTip(_("uncertainty {doubt:.2f}, change from the neighbouring slices {change:.2f}").format(
                    doubt=score.doubt, change=score.inconsistency))
                self.table.setItem(row, column, item)
        self.table.resizeColumnsToContents()

    def jumpToRow(self, row: int, column: int = 0) -> None:
        """Centre every slice view on the segment's centre on that slice, then tell `onJump`."""
        if 0 <= row < len(self.points):
            r, a, s = self.points[row]
            slicer.modules.markups.logic().JumpSlicesToLocation(r, a, s, True)
            if self.onJump is not None:
                self.onJump(self.keys[row], self.points[row])


def openSegmentEditor(segmentationNode, volumeNode) -> None:
    """Switch to the Segment Editor on `segmentationNode`, with `volumeNode` (if any) as its source volume."""
    slicer.util.selectModule("SegmentEditor")
    editor = slicer.util.getModuleWidget("SegmentEditor").editor
    editor.setSegmentationNode(segmentationNode)
    if volumeNode is not None:
        editor.setSourceVolumeNode(volumeNode)
