//! What the filter answers itself: every failure as one table, and the JSON:API documents.

pub mod failure;
pub mod jsonapi;
