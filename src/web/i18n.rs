//! English and Russian.
