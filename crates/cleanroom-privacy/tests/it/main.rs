//! Statistical checks of the privacy promises, as an attacker would test them.
//!
//! OpenDP draws from OS randomness and cannot be seeded, so these tests are statistical with
//! bounds chosen so that a correct mechanism fails with probability below 10⁻⁶ per assertion,
//! while a broken one (sensitivity off by 2×, or a plain threshold) fails them almost surely.

mod attacks;
