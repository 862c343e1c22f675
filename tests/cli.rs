//! The `portia` binary, run as a user would.
