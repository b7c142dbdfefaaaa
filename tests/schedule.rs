//! Every scheduler key the engine reads, against values diffusers computed
//! (`tests/fixtures/make_scheduler_reference.py`): betas and alphas_cumprod
//! for each beta schedule and trained_betas, DDIM's timesteps for each
//! timestep_spacing and steps_offset, and the alpha_cumprod each DDIM step
//! moves to (set_alpha_to_one). Keys the engine does not implement are
//! refused by name.

use ddpm_wgpu::schedule::{ddim_timesteps, Schedule, SchedulerConfig};
use serde_json::Value;

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedulers/reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// Largest |a - b| / |b|.
fn max_relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| ((x - y) / y).abs()).fold(0.0, f64::max)
}

#[test]
fn schedules_and_ddim_timesteps_match_diffusers() {
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    let mut ddim_checked = 0;
    for case in cases {
        let config_json = case["config"].to_string();
        let config = SchedulerConfig::from_json(&config_json).unwrap_or_else(|e| panic!("{config_json}: {e:#}"));
        let schedule = Schedule::new(config.clone()).unwrap();
        // diffusers holds betas in f32 and multiplies alphas_cumprod in f32;
        // the engine's are f64.
        let betas = max_relative(&schedule.betas, &floats(&case["betas"]));
        assert!(betas < 2e-6, "{config_json}: betas differ by {betas:e} relative");
        let abar = max_relative(&schedule.alphas_cumprod, &floats(&case["alphas_cumprod"]));
        assert!(abar < 2e-5, "{config_json}: alphas_cumprod differ by {abar:e} relative");
        for d in case["ddim"].as_array().unwrap() {
            let n = d["steps"].as_u64().unwrap() as usize;
            let ours = ddim_timesteps(&config, n);
            if d.get("error").is_some() {
                let err = ours.expect_err(&format!("{config_json}, {n} steps: diffusers indexes past T"));
                assert!(err.to_string().contains("steps_offset"), "{err}");
                continue;
            }
            let (steps, stride) = ours.unwrap();
            let want: Vec<usize> =
                d["timesteps"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as usize).collect();
            assert_eq!(steps, want, "{config_json}, {n} steps");
            let coefficients = schedule.ddim_coefficients(stride, 0.5).unwrap();
            let prev: Vec<f64> = steps.iter().map(|&i| coefficients.coef_x0[i].powi(2)).collect();
            let rel = max_relative(&prev, &floats(&d["prev_alpha_cumprod"]));
            assert!(rel < 2e-5, "{config_json}, {n} steps: the alpha_cumprod each step moves to differs by {rel:e}");
            ddim_checked += 1;
        }
    }
    assert!(cases.len() >= 10 && ddim_checked >= 40, "{} cases, {ddim_checked} DDIM settings", cases.len());
}

#[test]
fn every_key_survives_a_round_trip() {
    let text = r#"{"_class_name": "DDIMScheduler", "_diffusers_version": "0.42.1", "num_train_timesteps": 10,
        "beta_schedule": "scaled_linear", "trained_betas": [0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2],
        "variance_type": "fixed_large", "clip_sample": false, "clip_sample_range": 2.5,
        "prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 1,
        "set_alpha_to_one": false, "thresholding": false, "sample_max_value": 1.0,
        "dynamic_thresholding_ratio": 0.995, "rescale_betas_zero_snr": false}"#;
    let config = SchedulerConfig::from_json(text).unwrap();
    assert_eq!(config.trained_betas.as_ref().map(Vec::len), Some(10));
    assert_eq!(config.steps_offset, 1);
    assert!(!config.set_alpha_to_one && !config.clip_sample);
    assert_eq!(SchedulerConfig::from_json(&config.to_json()).unwrap(), config);
    assert_ne!(config, SchedulerConfig::default());
}

#[test]
fn keys_the_engine_does_not_implement_are_refused_by_name() {
    let refused = [
        (r#"{"thresholding": true}"#, "thresholding = true"),
        (r#"{"rescale_betas_zero_snr": true}"#, "rescale_betas_zero_snr = true"),
        (r#"{"timestep_type": "discrete"}"#, "unknown scheduler key 'timestep_type'"),
        (r#"{"beta_schedule": "exp"}"#, "unknown beta_schedule 'exp'"),
        (r#"{"timestep_spacing": "uniform"}"#, "unknown timestep_spacing 'uniform'"),
        (r#"{"variance_type": "learned_range"}"#, "unknown variance_type 'learned_range'"),
        (r#"{"num_train_timesteps": 4, "trained_betas": [0.1, 0.2]}"#, "trained_betas has 2 values"),
        (r#"{"trained_betas": "0.1"}"#, "trained_betas must be a list"),
        (r#"{"steps_offset": -1}"#, "steps_offset must be a whole number"),
        (r#"{"steps_offset": 1000}"#, "steps_offset 1000"),
        (r#"{"clip_sample": "yes"}"#, "clip_sample must be true or false"),
        (r#"[1, 2]"#, "not a JSON object"),
    ];
    for (text, want) in refused {
        let err = format!("{:#}", SchedulerConfig::from_json(text).expect_err(text));
        assert!(err.contains(want), "{text}: '{err}' does not say '{want}'");
    }
    // Off values and unused keys load.
    for text in [r#"{"thresholding": false, "sample_max_value": 3.0}"#, r#"{"rescale_betas_zero_snr": null}"#] {
        SchedulerConfig::from_json(text).unwrap_or_else(|e| panic!("{text}: {e:#}"));
    }
}
