"""CGCNN property prediction and screening of candidates."""
