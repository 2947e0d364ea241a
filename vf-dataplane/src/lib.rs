//! Everything below the virtqueues.
