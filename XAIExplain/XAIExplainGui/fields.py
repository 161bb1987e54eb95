"""Typed, bounded Qt fields for method parameters, as the logic's ``parameterField`` describes them."""
import qt


def parameterWidget(field: dict, value):
    """(widget, its value-changed signal): a combo box (choices), check box, spin box (bounds; an optional
    count shows 'auto') or line edit, showing ``value``."""
    if field["kind"] == "choice":
        widget, signal = qt.QComboBox(), "currentTextChanged(QString)"
        widget.addItems(field["choices"])
        widget.currentText = str(value) if str(value) in field["choices"] else field["choices"][0]
    elif field["kind"] == "bool":
        widget, signal = qt.QCheckBox(), "toggled(bool)"
        widget.checked = bool(value)
    elif field["kind"] in ("int", "float"):
        widget, signal = (qt.QSpinBox(), "valueChanged(int)") if field["kind"] == "int" else \
            (qt.QDoubleSpinBox(), "valueChanged(double)")
        if field["kind"] == "float":
            widget.decimals = field["decimals"]
        widget.specialValueText = "auto" if field["auto"] else ""
        widget.setRange(field["low"], field["high"])
        widget.singleStep = field["step"]
        widget.value = field["low"] if value is None else value
    else:
        widget, signal = qt.QLineEdit(), "textChanged(QString)"
        widget.text = "" if value is None else str(value)
    return widget, signal
