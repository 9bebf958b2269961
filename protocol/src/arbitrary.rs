//! proptest strategies
