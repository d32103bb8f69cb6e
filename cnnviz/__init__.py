"""cnnviz: look inside convolutional networks (backend; the Streamlit views live in pages/)."""
__version__ = "0.1.0"
