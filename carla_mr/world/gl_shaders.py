"""GLSL sources of the OpenGL camera (:mod:`carla_mr.world.gl_render`).

Every program writes two colour attachments: 0 the shaded RGB, 1 ``(instance, depth)``
where instance is ``sign index + 1`` on a sign's front face (0 elsewhere) and depth the
distance along the camera's forward axis in metres (0 for the sky). Positions are CARLA world
metres; ``u_vp`` maps them to clip space.
"""

_LIGHT = """
uniform vec3 u_cam;
uniform vec3 u_fwd;
uniform vec3 u_sun;
uniform vec3 u_sun_col;
uniform vec3 u_amb;
uniform vec3 u_fog_col;
uniform float u_fog_density;
layout(location = 0) out vec4 f_col;
layout(location = 1) out vec4 f_aux;

vec3 shade(vec3 c, vec3 n) {
    n = normalize(n);
    return c * (u_amb + u_sun_col * max(dot(n, u_sun), 0.0));
}

vec3 fogged(vec3 c, vec3 wpos) {
    float d = length(wpos - u_cam);
    return mix(u_fog_col, c, exp(-u_fog_density * d));
}

void emit(vec3 c, float alpha, float inst, vec3 wpos) {
    f_col = vec4(fogged(c, wpos), alpha);
    f_aux = vec4(inst, dot(wpos - u_cam, u_fwd), 0.0, 1.0);
}
"""

STATIC_VS = """
#version 330
uniform mat4 u_vp;
in vec3 in_pos;
in vec3 in_nrm;
in vec3 in_col;
in float in_aa;
out vec3 v_wpos;
out vec3 v_nrm;
out vec3 v_col;
out float v_aa;
void main() {
    v_wpos = in_pos;
    v_nrm = in_nrm;
    v_col = in_col;
    v_aa = in_aa;
    gl_Position = u_vp * vec4(in_pos, 1.0);
}
"""

STATIC_FS = """
#version 330
in vec3 v_wpos;
in vec3 v_nrm;
in vec3 v_col;
in float v_aa;
uniform float u_emissive;
""" + _LIGHT + """
void main() {
    float a = 1.0;
    if (v_aa < 1.5) {  // a lane marking: smooth edges across it
        float w = max(fwidth(v_aa), 1e-4);
        a = clamp((1.0 - abs(v_aa)) / w, 0.0, 1.0);
        if (a <= 0.0) discard;
    }
    vec3 base = v_col;
    float glow = 0.0;
    if (v_aa > 4.0) {  // a facade: windows on a 3.2 m x 3.3 m grid
        vec3 n = normalize(v_nrm);
        float u = dot(v_wpos.xy, vec2(-n.y, n.x)) / 3.2;
        float v = v_wpos.z / 3.3;
        vec2 f = fract(vec2(u, v));
        if (abs(n.z) < 0.5 && f.x > 0.22 && f.x < 0.78 && f.y > 0.3 && f.y < 0.82) {
            float h = fract(sin(dot(floor(vec2(u, v)), vec2(12.9898, 78.233))) * 43758.5453);
            base = vec3(0.16, 0.2, 0.26) + 0.1 * h;
            glow = h > 0.55 ? u_emissive : 0.0;
        }
    }
    vec3 c = shade(base, v_nrm);
    if (glow > 0.0) c = vec3(0.95, 0.8, 0.5) * (0.7 + 0.3 * fract(glow * 7.0));
    // Colours above 1 (lamps, lit windows) glow when u_emissive is set.
    if (max(v_col.r, max(v_col.g, v_col.b)) > 1.0) c = mix(c, min(v_col, vec3(1.0)), u_emissive);
    emit(c, a, 0.0, v_wpos);
}
"""

VEHICLE_VS = """
#version 330
uniform mat4 u_vp;
in vec3 in_pos;     // unit car (body + cabin), x forward, y right, z up; 0..1 in z
in vec3 in_box;     // the same vertex on a plain box (trucks, buses)
in vec3 in_nrm;
in float in_part;   // 0 body, 1 glass, 2 dark trim, 3 front lamp, 4 rear lamp
in vec4 i_pose;     // x, y, z (metres), yaw (radians)
in vec3 i_size;     // length, width, height (metres)
in vec3 i_col;
in float i_shape;   // 1 car profile, 0 box
out vec3 v_wpos;
out vec3 v_nrm;
out vec3 v_col;
out float v_part;
void main() {
    vec3 p = mix(in_box, in_pos, i_shape) * i_size;
    float c = cos(i_pose.w), s = sin(i_pose.w);
    vec3 w = vec3(c * p.x - s * p.y, s * p.x + c * p.y, p.z) + i_pose.xyz;
    v_nrm = vec3(c * in_nrm.x - s * in_nrm.y, s * in_nrm.x + c * in_nrm.y, in_nrm.z);
    v_wpos = w;
    v_part = in_part;
    vec3 glass = vec3(0.16, 0.19, 0.23);
    vec3 col = i_col;
    if (in_part > 0.5 && in_part < 1.5) col = mix(i_col * 0.8, glass, 0.35 + 0.6 * i_shape);
    if (in_part > 1.5 && in_part < 2.5) col = vec3(0.08, 0.08, 0.09);
    v_col = col;
    gl_Position = u_vp * vec4(w, 1.0);
}
"""

VEHICLE_FS = """
#version 330
in vec3 v_wpos;
in vec3 v_nrm;
in vec3 v_col;
in float v_part;
uniform float u_emissive;
""" + _LIGHT + """
void main() {
    vec3 c = shade(v_col, v_nrm);
    if (v_part > 2.5 && v_part < 3.5) c = mix(vec3(0.85, 0.85, 0.8), vec3(1.0, 0.97, 0.85), u_emissive);
    if (v_part > 3.5) c = mix(vec3(0.5, 0.05, 0.05), vec3(1.0, 0.1, 0.08), u_emissive);
    emit(c, 1.0, 0.0, v_wpos);
}
"""

SIGN_VS = """
#version 330
uniform mat4 u_vp;
in vec3 in_pos;
in vec2 in_uv;
in vec3 in_nrm;
in float in_layer;
in float in_idx;
out vec3 v_wpos;
out vec3 v_nrm;
out vec2 v_uv;
flat out float v_layer;
flat out float v_idx;
void main() {
    v_wpos = in_pos;
    v_nrm = in_nrm;
    v_uv = in_uv;
    v_layer = in_layer;
    v_idx = in_idx;
    gl_Position = u_vp * vec4(in_pos, 1.0);
}
"""

_SIGN_COMMON = """
in vec3 v_wpos;
in vec3 v_nrm;
in vec2 v_uv;
flat in float v_layer;
flat in float v_idx;
uniform sampler2DArray u_faces;
uniform sampler2D u_state;   // (S, 1): x = extra layer (traffic-light state), y = 1 when in range
uniform vec3 u_cam_pos;

bool sign_texel(out vec4 t, out bool front, out vec2 st) {
    st = texelFetch(u_state, ivec2(int(v_idx + 0.5), 0), 0).xy;
    if (st.y < 0.5) return false;
    t = texture(u_faces, vec3(v_uv, v_layer + st.x));
    if (t.a < 0.5) return false;
    front = dot(v_nrm, u_cam_pos - v_wpos) > 0.0;
    return true;
}
"""

SIGN_FS = """
#version 330
uniform vec3 u_back;
""" + _SIGN_COMMON + _LIGHT + """
void main() {
    vec4 t;
    bool front;
    vec2 st;
    if (!sign_texel(t, front, st)) discard;
    if (front) {
        // Retro-reflective faces: never darker than 55% of their colour.
        float l = u_amb.g + u_sun_col.g * max(dot(normalize(v_nrm), u_sun), 0.0);
        // A traffic light showing a state: its lamps glow (no shading).
        float k = st.x > 0.5 ? 1.0 : clamp(0.55 + 0.5 * l, 0.0, 1.0);
        emit(t.rgb * k, 1.0, v_idx + 1.0, v_wpos);
    } else {
        emit(shade(u_back, -v_nrm), 1.0, 0.0, v_wpos);
    }
}
"""

#: The amodal pass: every front-face fragment of a sign, depth test off, counted per sign into
#: an SSBO of 5 ints per sign: pixel count, x min, y min (top row 0), x max, y max.
AMODAL_FS = """
#version 430
layout(std430, binding = 0) buffer Stats { int s[]; };
uniform int u_h;
layout(location = 0) out vec4 f_col;
""" + _SIGN_COMMON + """
void main() {
    vec4 t;
    bool front;
    vec2 st;
    if (!sign_texel(t, front, st) || !front) discard;
    int i = int(v_idx + 0.5) * 5;
    int x = int(gl_FragCoord.x);
    int y = u_h - 1 - int(gl_FragCoord.y);
    atomicAdd(s[i], 1);
    atomicMin(s[i + 1], x);
    atomicMin(s[i + 2], y);
    atomicMax(s[i + 3], x);
    atomicMax(s[i + 4], y);
    f_col = vec4(0.0);
}
"""

SKY_VS = """
#version 330
in vec2 in_ndc;
out vec2 v_ndc;
void main() {
    v_ndc = in_ndc;
    gl_Position = vec4(in_ndc, 1.0, 1.0);
}
"""

SKY_FS = """
#version 330
in vec2 v_ndc;
uniform mat3 u_ray;   // (ndc x, ndc y, 1) -> world direction
uniform vec3 u_top;
uniform vec3 u_horizon;
uniform vec3 u_fog_col;
uniform float u_fog_density;
layout(location = 0) out vec4 f_col;
layout(location = 1) out vec4 f_aux;
void main() {
    vec3 d = normalize(u_ray * vec3(v_ndc, 1.0));
    float t = smoothstep(0.0, 0.45, d.z);
    vec3 c = mix(u_horizon, u_top, t);
    c = mix(c, u_fog_col, clamp(u_fog_density * 40.0, 0.0, 1.0) * (1.0 - t * 0.5));
    f_col = vec4(c, 1.0);
    f_aux = vec4(0.0, 0.0, 0.0, 1.0);
}
"""
