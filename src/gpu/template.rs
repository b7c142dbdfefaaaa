//! The one place that generates shader code: a tiny line-based template
//! language used to unroll register tiles into straight-line WGSL.
//!
//! Software Vulkan (and some GPU compilers) turn a dynamically indexed private
//! array into memory, which made tiled kernels 3-14x slower on lavapipe; so
//! kernels write their tiles with these directives instead of loops over
//! `array<vec4<f32>, N>`.
//!
//! ```text
//! //@for r in 0..TM        repeat the block for r = 0, 1, ..., TM-1
//! //@if SUBGROUPS          keep the block when the define is non-zero
//! //@if !SUBGROUPS         ... or zero
//! //@else
//! //@end                   closes the innermost //@for or //@if
//!                          (a switched-off block is skipped unread, so
//!                          its names need no defines)
//! {expr}                   replaced by the value of expr: integers, defines
//!                          and loop variables with + - * / % and parentheses
//! ```
//! Braces that do not hold such an expression (WGSL blocks) are left alone.

use anyhow::{anyhow, bail, Result};

/// Expand `source` with the given defines.
pub fn expand(source: &str, defines: &[(&str, i64)]) -> Result<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut vars: Vec<(String, i64)> = defines.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let mut out = String::with_capacity(source.len());
    let end = expand_block(&lines, 0, &mut vars, &mut out, true)?;
    if end != lines.len() {
        bail!("template line {}: unmatched //@end or //@else", end + 1);
    }
    Ok(out)
}

fn directive(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix("//@").map(str::trim)
}

/// Expands lines from `start` until an unmatched `//@end`/`//@else` (whose
/// index is returned) or the end of input. `emit` false only skips.
fn expand_block(
    lines: &[&str],
    start: usize,
    vars: &mut Vec<(String, i64)>,
    out: &mut String,
    emit: bool,
) -> Result<usize> {
    let mut i = start;
    while i < lines.len() {
        let line = lines[i];
        let Some(d) = directive(line) else {
            if emit {
                out.push_str(&substitute(line, vars).map_err(|e| anyhow!("template line {}: {e}", i + 1))?);
                out.push('\n');
            }
            i += 1;
            continue;
        };
        if d == "end" || d == "else" {
            return Ok(i);
        }
        if let Some(rest) = d.strip_prefix("for ") {
            let (var, range) = rest
                .split_once(" in ")
                .ok_or_else(|| anyhow!("template line {}: expected `//@for v in A..B`", i + 1))?;
            let (a, b) =
                range.split_once("..").ok_or_else(|| anyhow!("template line {}: expected a range A..B", i + 1))?;
            // A switched-off block is only walked: its names need no defines.
            let (a, count) = match emit {
                true => {
                    let (a, b) = (eval(a.trim(), vars)?, eval(b.trim(), vars)?);
                    (a, (b - a).max(0))
                }
                false => (0, 0),
            };
            let mut body_end = i + 1;
            // Walk the body once even when it repeats zero times, to find its end.
            for k in 0..count.max(1) {
                vars.push((var.trim().to_string(), a + k));
                body_end = expand_block(lines, i + 1, vars, out, emit && count > 0)?;
                vars.pop();
            }
            expect_end(lines, body_end, "for")?;
            i = body_end + 1;
        } else if let Some(cond) = d.strip_prefix("if ") {
            let cond = cond.trim();
            let value = emit
                && match cond.strip_prefix('!') {
                    Some(name) => eval(name.trim(), vars)? == 0,
                    None => eval(cond, vars)? != 0,
                };
            let mut j = expand_block(lines, i + 1, vars, out, emit && value)?;
            if j < lines.len() && directive(lines[j]) == Some("else") {
                j = expand_block(lines, j + 1, vars, out, emit && !value)?;
            }
            expect_end(lines, j, "if")?;
            i = j + 1;
        } else {
            bail!("template line {}: unknown directive `//@{d}`", i + 1);
        }
    }
    Ok(i)
}

fn expect_end(lines: &[&str], at: usize, what: &str) -> Result<()> {
    if at >= lines.len() || directive(lines[at]) != Some("end") {
        bail!("template: //@{what} without a matching //@end");
    }
    Ok(())
}

/// Replace every `{expr}` whose contents parse as an expression.
fn substitute(line: &str, vars: &[(String, i64)]) -> Result<String> {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if is_expression(&after[..close]) => {
                out.push_str(&eval(&after[..close], vars)?.to_string());
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_expression(s: &str) -> bool {
    !s.is_empty()
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '(')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "_+-*/%()".contains(c))
}

/// Evaluate an integer expression: `+ - * / %`, parentheses, integers and
/// names (defines and loop variables), with the usual precedence.
fn eval(expr: &str, vars: &[(String, i64)]) -> Result<i64> {
    let tokens: Vec<char> = expr.chars().filter(|c| !c.is_whitespace()).collect();
    let mut pos = 0;
    let value = eval_sum(&tokens, &mut pos, vars)?;
    if pos != tokens.len() {
        bail!("cannot parse template expression `{expr}`");
    }
    Ok(value)
}

fn eval_sum(t: &[char], pos: &mut usize, vars: &[(String, i64)]) -> Result<i64> {
    let mut value = eval_product(t, pos, vars)?;
    while let Some(&op @ ('+' | '-')) = t.get(*pos) {
        *pos += 1;
        let rhs = eval_product(t, pos, vars)?;
        value = if op == '+' { value + rhs } else { value - rhs };
    }
    Ok(value)
}

fn eval_product(t: &[char], pos: &mut usize, vars: &[(String, i64)]) -> Result<i64> {
    let mut value = eval_atom(t, pos, vars)?;
    while let Some(&op @ ('*' | '/' | '%')) = t.get(*pos) {
        *pos += 1;
        let rhs = eval_atom(t, pos, vars)?;
        if op != '*' && rhs == 0 {
            bail!("division by zero in template expression");
        }
        value = match op {
            '*' => value * rhs,
            '/' => value / rhs,
            _ => value % rhs,
        };
    }
    Ok(value)
}

fn eval_atom(t: &[char], pos: &mut usize, vars: &[(String, i64)]) -> Result<i64> {
    if t.get(*pos) == Some(&'(') {
        *pos += 1;
        let value = eval_sum(t, pos, vars)?;
        if t.get(*pos) != Some(&')') {
            bail!("missing `)` in template expression");
        }
        *pos += 1;
        return Ok(value);
    }
    let start = *pos;
    while t.get(*pos).is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_') {
        *pos += 1;
    }
    let atom: String = t[start..*pos].iter().collect();
    if let Ok(n) = atom.parse::<i64>() {
        return Ok(n);
    }
    vars.iter()
        .rev()
        .find(|(k, _)| *k == atom)
        .map(|(_, v)| *v)
        .ok_or_else(|| anyhow!("unknown template name `{atom}`"))
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn unrolls_nested_loops_and_conditions() {
        let src = "a\n//@for r in 0..2\n//@for c in 0..N\nx{r}_{c} = {(r*N+c)%4};\n//@end\n//@end\n//@if !F\nno\n//@else\nyes\n//@end\nfn f() { return; }";
        let out = expand(src, &[("N", 3), ("F", 1)]).unwrap();
        assert_eq!(
            out,
            "a\nx0_0 = 0;\nx0_1 = 1;\nx0_2 = 2;\nx1_0 = 3;\nx1_1 = 0;\nx1_2 = 1;\nyes\nfn f() { return; }\n"
        );
    }

    #[test]
    fn rejects_unbalanced_and_unknown() {
        assert!(expand("//@for r in 0..2\nx", &[]).is_err());
        assert!(expand("//@end", &[]).is_err());
        assert!(expand("{nope}", &[]).is_err());
        assert!(expand("//@if Q\n//@end", &[]).is_err());
    }

    #[test]
    fn switched_off_blocks_need_no_defines() {
        let src = "//@if A\n//@for r in 0..N\n{r+M}\n//@end\n//@if B\nb\n//@end\n//@else\nnone\n//@end";
        assert_eq!(expand(src, &[("A", 0)]).unwrap(), "none\n");
        // Switched on, the same names are required.
        assert!(expand(src, &[("A", 1)]).is_err());
        assert_eq!(expand(src, &[("A", 1), ("N", 2), ("M", 5), ("B", 0)]).unwrap(), "5\n6\n");
    }
}
