"""The panel's Qt parts built in code beside the module's ``.ui`` (XAIExplainLib stays free of Qt)."""
