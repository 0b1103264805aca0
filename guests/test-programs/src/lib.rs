//! Guests for cella's tests live in `src/bin/`, one per behaviour.
