//! PACE's PIN rule (docs/contract.md, "PACE's user API"), checked when a PIN is set:
//! exactly 4 ASCII digits, at least 3 different digits, and not a run of consecutive digits up
//! or down, with wrap-around (1234, 4321, 9012 and 0987 are refused). 9,340 of the 10,000
//! four-digit strings pass.

/// Why a PIN is refused. The message never repeats the PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinProblem {
    NotFourDigits,
    TooFewDistinctDigits,
    ConsecutiveRun,
}

impl std::fmt::Display for PinProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PinProblem::NotFourDigits => "a PIN is exactly 4 digits",
            PinProblem::TooFewDistinctDigits => "a PIN needs at least 3 different digits",
            PinProblem::ConsecutiveRun => {
                "a PIN must not be a run of consecutive digits, up or down (wrapping 9 to 0)"
            }
        })
    }
}

/// `Ok(())` if `pin` passes PACE's rule.
pub fn check_pin(pin: &str) -> Result<(), PinProblem> {
    let digits: Vec<u8> = pin.bytes().map(|b| b.wrapping_sub(b'0')).collect();
    if digits.len() != 4 || digits.iter().any(|d| *d > 9) {
        return Err(PinProblem::NotFourDigits);
    }
    let mut seen = [false; 10];
    for d in &digits {
        if let Some(s) = seen.get_mut(usize::from(*d)) {
            *s = true;
        }
    }
    if seen.iter().filter(|s| **s).count() < 3 {
        return Err(PinProblem::TooFewDistinctDigits);
    }
    let steps: Vec<u8> = digits
        .windows(2)
        .filter_map(|w| match w {
            [a, b] => Some((10 + b - a) % 10),
            _ => None,
        })
        .collect();
    if steps.iter().all(|s| *s == 1) || steps.iter().all(|s| *s == 9) {
        return Err(PinProblem::ConsecutiveRun);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples() {
        assert_eq!(check_pin("8299"), Ok(()));
        assert_eq!(check_pin("1357"), Ok(()));
        assert_eq!(check_pin("1123"), Ok(()));
        for run in [
            "1234", "4321", "9012", "0987", "7890", "0123", "3210", "8901",
        ] {
            assert_eq!(check_pin(run), Err(PinProblem::ConsecutiveRun), "{run}");
        }
        for few in ["1111", "1112", "1212", "0000", "9900"] {
            assert_eq!(
                check_pin(few),
                Err(PinProblem::TooFewDistinctDigits),
                "{few}"
            );
        }
        for bad in ["", "123", "12345", "12a4", "١٢٣٤", " 829", "8299\n", "+829"] {
            assert_eq!(check_pin(bad), Err(PinProblem::NotFourDigits), "{bad:?}");
        }
    }

    #[test]
    fn exactly_9340_pass() {
        let passing = (0..10_000)
            .filter(|n| check_pin(&format!("{n:04}")).is_ok())
            .count();
        assert_eq!(passing, 9_340);
    }
}
