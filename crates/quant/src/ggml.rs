//! GGML block formats (Q4_0 … Q6_K) as llama.cpp writes them.
