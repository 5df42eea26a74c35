//! The AVX upper-state fix lives in the edge agent
//! (`edge_agent::inference::avx`, where its measurements are described);
//! the profile and the proposed-loader experiments reuse it.

pub use edge_agent::inference::avx::{eval_then_vzeroupper, vzeroupper};
