//! Integration tests of `cleanroom-identity`: the messy-identifier corpus, properties of every
//! normaliser, and the prepare pipeline end to end on small files.

mod corpus;
mod phone_oracle;
mod pipeline;
mod properties;
mod transforms;
