//! e2e test support
