//! Tests of the qcow2 engine.
