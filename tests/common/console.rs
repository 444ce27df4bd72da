//! A console visitor over plain HTTP: keeps its cookies as a browser would (whatever their
//! `Secure` attribute: the test server is plain HTTP), does not follow redirects (tests look
//! at them), and reads the CSRF token from the forms it is served.

use std::{collections::HashMap, sync::Mutex};

use reqwest::{header, redirect::Policy, StatusCode};

use super::{Resp, TestApp};

pub struct Visitor {
    base: String,
    client: reqwest::Client,
    cookies: Mutex<HashMap<String, String>>,
    /// Every `Set-Cookie` header received, as sent.
    pub set_cookies: Mutex<Vec<String>>,
}

impl Visitor {
    pub fn new(app: &TestApp) -> Self {
        Self {
            base: app.base.clone(),
            client: reqwest::Client::builder()
                .redirect(Policy::none())
                .build()
                .expect("client"),
            cookies: Mutex::default(),
            set_cookies: Mutex::default(),
        }
    }

    fn keep_cookies(&self, res: &reqwest::Response) {
        for v in res.headers().get_all(header::SET_COOKIE) {
            let v = v.to_str().unwrap_or_default().to_owned();
            let (pair, attrs) = v.split_once(';').unwrap_or((&v, ""));
            if let Some((name, value)) = pair.split_once('=') {
                let gone = attrs.to_ascii_lowercase().contains("max-age=0");
                let mut jar = self.cookies.lock().unwrap();
                if gone {
                    jar.remove(name.trim());
                } else {
                    jar.insert(name.trim().to_owned(), value.trim().to_owned());
                }
            }
            self.set_cookies.lock().unwrap().push(v);
        }
    }

    fn cookie_header(&self) -> String {
        let jar = self.cookies.lock().unwrap();
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub fn has_cookie(&self, name: &str) -> bool {
        self.cookies.lock().unwrap().contains_key(name)
    }

    pub async fn get(&self, path: &str) -> Resp {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .send()
            .await
            .expect("request is sent");
        self.keep_cookies(&res);
        Resp::read(res).await
    }

    /// What a page's script sends when it refreshes its list by itself (console.js): the
    /// same GET, marked as a refresh, which is not the operator's activity.
    pub async fn refresh(&self, path: &str) -> Resp {
        let res = self
            .client
            .get(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .header("x-console-refresh", "1")
            .send()
            .await
            .expect("request is sent");
        self.keep_cookies(&res);
        Resp::read(res).await
    }

    /// Posts a form as a browser does (`application/x-www-form-urlencoded`).
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Resp {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .header(header::COOKIE, self.cookie_header())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request is sent");
        self.keep_cookies(&res);
        Resp::read(res).await
    }

    /// Signs in through the form; returns the answer to the form's POST.
    pub async fn sign_in(&self, email: &str, password: &str) -> Resp {
        let form = self.get("/console/login").await;
        assert_eq!(form.status, StatusCode::OK, "{}", form.text);
        let csrf = csrf_of(&form.text).expect("the sign-in form has a CSRF token");
        self.post_form(
            "/console/login",
            &[("csrf", &csrf), ("email", email), ("password", password)],
        )
        .await
    }

    /// The CSRF token of the page at `path` (signed in).
    pub async fn csrf(&self, path: &str) -> String {
        let page = self.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        csrf_of(&page.text).expect("the page has a CSRF token")
    }
}

/// The value of the first `csrf` hidden field of an HTML page.
pub fn csrf_of(html: &str) -> Option<String> {
    let at = html.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
    let rest = &html[at..];
    Some(rest[..rest.find('"')?].to_owned())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
